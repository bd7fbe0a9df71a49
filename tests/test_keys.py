"""The etcd key schema: every path in reference §1-§2.11, the trailing-slash rule, parse_key and range ends.

Covers clustermesh.keys only; what values mean is tested in test_codec_*.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustermesh import keys
from clustermesh.keys import KeyType, Kind, ParsedKey

segments = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=12)
identities = st.integers(min_value=0, max_value=0xFFFF_FFFF)
ips = st.ip_addresses().map(str)


def test_constants_are_ciliums() -> None:
    assert keys.BASE == "cilium"
    assert keys.STATE == "cilium/state"
    assert keys.CACHE == "cilium/cache"
    assert keys.HEARTBEAT_KEY == "cilium/.heartbeat"
    assert keys.CLUSTER_CONFIG_PREFIX == "cilium/cluster-config"
    assert keys.SYNCED_PREFIX == "cilium/synced"
    assert [kind.value for kind in Kind] == ["nodes", "services", "serviceexports", "identities", "ip"]


def test_state_keys_match_the_reference() -> None:
    assert keys.node_key("cluster3", "test-node-1") == "cilium/state/nodes/v1/cluster3/test-node-1"
    assert keys.service_key("cluster3", "ns-alpha", "echo-service") == (
        "cilium/state/services/v1/cluster3/ns-alpha/echo-service"
    )
    assert keys.service_export_key("cluster1", "default", "basic") == (
        "cilium/state/serviceexports/v1/cluster1/default/basic"
    )
    assert keys.identity_key(196915) == "cilium/state/identities/v1/id/196915"
    assert keys.ip_key("10.244.2.74") == "cilium/state/ip/v1/default/10.244.2.74"
    assert keys.ip_key("10.0.0.0/8") == "cilium/state/ip/v1/default/10.0.0.0/8"
    assert keys.cluster_config_key("cluster3") == "cilium/cluster-config/cluster3"


def test_cached_keys_follow_the_kvstoremesh_mapping() -> None:
    # Reference §2.11: state key in the remote etcd → cached key in the local one.
    assert keys.cached_node_key("c1", "node") == "cilium/cache/nodes/v1/c1/node"
    assert keys.cached_service_key("c1", "ns", "svc") == "cilium/cache/services/v1/c1/ns/svc"
    assert keys.cached_service_export_key("c1", "ns", "svc") == "cilium/cache/serviceexports/v1/c1/ns/svc"
    assert keys.cached_identity_key("c1", 196915) == "cilium/cache/identities/v1/c1/id/196915"
    assert keys.cached_ip_key("c1", "10.244.2.74") == "cilium/cache/ip/v1/c1/10.244.2.74"


@pytest.mark.parametrize(
    ("kind", "state", "cached"),
    [
        (Kind.NODES, "cilium/synced/c/cilium/state/nodes/v1", "cilium/synced/c/cilium/cache/nodes/v1"),
        (Kind.SERVICES, "cilium/synced/c/cilium/state/services/v1", "cilium/synced/c/cilium/cache/services/v1"),
        (
            Kind.SERVICE_EXPORTS,
            "cilium/synced/c/cilium/state/serviceexports/v1",
            "cilium/synced/c/cilium/cache/serviceexports/v1",
        ),
        # Identities and ipcache canaries name the base prefix, not the `id/` or `default/` sub-prefix.
        (
            Kind.IDENTITIES,
            "cilium/synced/c/cilium/state/identities/v1",
            "cilium/synced/c/cilium/cache/identities/v1",
        ),
        (Kind.IPCACHE, "cilium/synced/c/cilium/state/ip/v1", "cilium/synced/c/cilium/cache/ip/v1"),
    ],
)
def test_synced_canary_keys(kind: Kind, state: str, cached: str) -> None:
    assert keys.synced_canary_key("c", kind) == state
    assert keys.synced_canary_key("c", kind, cached=True) == cached
    assert state.startswith(keys.synced_prefix("c"))
    assert keys.synced_prefix("c") == "cilium/synced/c/"


@pytest.mark.parametrize(
    ("kind", "state", "cached"),
    [
        (Kind.NODES, "cilium/state/nodes/v1/a/", "cilium/cache/nodes/v1/a/"),
        (Kind.SERVICES, "cilium/state/services/v1/a/", "cilium/cache/services/v1/a/"),
        (Kind.SERVICE_EXPORTS, "cilium/state/serviceexports/v1/a/", "cilium/cache/serviceexports/v1/a/"),
        (Kind.IDENTITIES, "cilium/state/identities/v1/id/", "cilium/cache/identities/v1/a/id/"),
        (Kind.IPCACHE, "cilium/state/ip/v1/default/", "cilium/cache/ip/v1/a/"),
    ],
)
def test_watch_prefixes(kind: Kind, state: str, cached: str) -> None:
    assert keys.watch_prefix(kind, "a", cached=False) == state
    assert keys.watch_prefix(kind, "a", cached=True) == cached


@pytest.mark.parametrize("kind", [Kind.NODES, Kind.SERVICES, Kind.SERVICE_EXPORTS])
def test_watch_prefix_of_a_cluster_excludes_a_cluster_whose_name_extends_it(kind: Kind) -> None:
    # The reason for the trailing `/`: cluster `a` must not see cluster `ab`'s keys.
    prefix = keys.watch_prefix(kind, "a", cached=False)
    assert not keys.node_key("ab", "n").startswith(prefix)
    assert not keys.service_key("ab", "ns", "n").startswith(prefix)
    assert not keys.service_export_key("ab", "ns", "n").startswith(prefix)


@given(cluster=segments, name=segments, namespace=segments, numeric_id=identities, ip=ips)
@settings(max_examples=100, deadline=None)
def test_record_key_is_watch_prefix_plus_name(
    cluster: str, name: str, namespace: str, numeric_id: int, ip: str
) -> None:
    def prefix(kind: Kind, cached: bool) -> str:
        return keys.watch_prefix(kind, cluster, cached=cached)

    assert keys.node_key(cluster, name) == prefix(Kind.NODES, False) + name
    assert keys.cached_node_key(cluster, name) == prefix(Kind.NODES, True) + name
    assert keys.service_key(cluster, namespace, name) == prefix(Kind.SERVICES, False) + f"{namespace}/{name}"
    assert keys.cached_service_key(cluster, namespace, name) == prefix(Kind.SERVICES, True) + f"{namespace}/{name}"
    assert keys.service_export_key(cluster, namespace, name) == (
        prefix(Kind.SERVICE_EXPORTS, False) + f"{namespace}/{name}"
    )
    assert keys.identity_key(numeric_id) == prefix(Kind.IDENTITIES, False) + str(numeric_id)
    assert keys.cached_identity_key(cluster, numeric_id) == prefix(Kind.IDENTITIES, True) + str(numeric_id)
    assert keys.ip_key(ip) == prefix(Kind.IPCACHE, False) + ip
    assert keys.cached_ip_key(cluster, ip) == prefix(Kind.IPCACHE, True) + ip


@pytest.mark.parametrize("bad", ["", "a/b", "/", "a/"])
def test_builders_refuse_ambiguous_segments(bad: str) -> None:
    builders: list[Callable[[], str]] = [
        lambda: keys.node_key(bad, "n"),
        lambda: keys.node_key("c", bad),
        lambda: keys.service_key("c", bad, "n"),
        lambda: keys.cached_service_export_key("c", "ns", bad),
        lambda: keys.cached_identity_key(bad, 1),
        lambda: keys.cluster_config_key(bad),
        lambda: keys.synced_prefix(bad),
        lambda: keys.watch_prefix(Kind.IPCACHE, bad, cached=False),
    ]
    for build in builders:
        with pytest.raises(ValueError, match="path segment"):
            build()


@pytest.mark.parametrize("bad", ["", "/", "1.2.3.4/", "/8", "1.2.3.4/8/9"])
def test_ip_keys_refuse_malformed_names(bad: str) -> None:
    with pytest.raises(ValueError, match="IP/prefixlen"):
        keys.ip_key(bad)


@pytest.mark.parametrize("bad", [-1, 0x1_0000_0000])
def test_identity_keys_refuse_non_uint32(bad: int) -> None:
    with pytest.raises(ValueError, match="uint32"):
        keys.identity_key(bad)


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("cilium/.heartbeat", ParsedKey(KeyType.HEARTBEAT)),
        ("cilium/cluster-config/c3", ParsedKey(KeyType.CLUSTER_CONFIG, cluster="c3")),
        (
            "cilium/synced/c3/cilium/state/identities/v1",
            ParsedKey(KeyType.SYNCED_CANARY, Kind.IDENTITIES, "c3"),
        ),
        (
            "cilium/synced/c3/cilium/cache/ip/v1",
            ParsedKey(KeyType.SYNCED_CANARY, Kind.IPCACHE, "c3", cached=True),
        ),
        ("cilium/state/nodes/v1/c3/n1", ParsedKey(KeyType.RECORD, Kind.NODES, "c3", name="n1")),
        (
            "cilium/cache/services/v1/c3/ns/svc",
            ParsedKey(KeyType.RECORD, Kind.SERVICES, "c3", True, namespace="ns", name="svc"),
        ),
        (
            "cilium/state/serviceexports/v1/c3/ns/svc",
            ParsedKey(KeyType.RECORD, Kind.SERVICE_EXPORTS, "c3", namespace="ns", name="svc"),
        ),
        ("cilium/state/identities/v1/id/196915", ParsedKey(KeyType.RECORD, Kind.IDENTITIES, identity=196915)),
        (
            "cilium/cache/identities/v1/c3/id/0",
            ParsedKey(KeyType.RECORD, Kind.IDENTITIES, "c3", True, identity=0),
        ),
        ("cilium/state/ip/v1/default/fd00::1", ParsedKey(KeyType.RECORD, Kind.IPCACHE, name="fd00::1")),
        ("cilium/state/ip/v1/default/10.0.0.0/8", ParsedKey(KeyType.RECORD, Kind.IPCACHE, name="10.0.0.0/8")),
        ("cilium/cache/ip/v1/c3/10.0.0.1", ParsedKey(KeyType.RECORD, Kind.IPCACHE, "c3", True, name="10.0.0.1")),
    ],
)
def test_parse_key(key: str, parsed: ParsedKey) -> None:
    assert keys.parse_key(key) == parsed


@pytest.mark.parametrize(
    "key",
    [
        "",
        "cilium",
        "cilium/",
        "other/state/nodes/v1/c/n",
        "cilium/.initlock",
        "cilium/.heartbeat/x",
        "cilium/cluster-config/",
        "cilium/cluster-config/a/b",
        "cilium/synced/c/cilium/state/identities/v1/id",
        "cilium/synced//cilium/state/nodes/v1",
        "cilium/synced/c/cilium/state/endpointslices/v1",
        "cilium/state/nodes/v2/c/n",
        "cilium/state/nodes/v1/c",
        "cilium/state/nodes/v1/c/",
        "cilium/state/nodes/v1//n",
        "cilium/state/nodes/v1/c/n/extra",
        "cilium/state/services/v1/c/ns",
        "cilium/state/services/v1/c/ns/",
        "cilium/state/noderegister/v1/n",
        "cilium/state/endpointslices/v1/c/ns/s",
        "cilium/state/identities/v1/value/k8s:a=b;/172.0.124.60",
        "cilium/state/identities/v1/locks/k8s:a=b;",
        "cilium/state/identities/v1/id/",
        "cilium/state/identities/v1/id/007",
        "cilium/state/identities/v1/id/-1",
        "cilium/state/identities/v1/id/+1",
        "cilium/state/identities/v1/id/4294967296",
        "cilium/state/identities/v1/id/" + "1" * 5000,
        "cilium/state/identities/v1/id/١٢",
        "cilium/cache/identities/v1/id/5",
        "cilium/cache/identities/v1//id/5",
        "cilium/state/ip/v1/other/10.0.0.1",
        "cilium/state/ip/v1/default/",
        "cilium/state/ip/v1/default/10.0.0.0/8/1",
        "cilium/state/ip/v1/default/10.0.0.0/",
        "cilium/cache/ip/v1//10.0.0.1",
    ],
)
def test_parse_key_returns_none_for_keys_the_mesh_does_not_read(key: str) -> None:
    assert keys.parse_key(key) is None


@given(cluster=segments, name=segments, namespace=segments, numeric_id=identities, ip=ips)
@settings(max_examples=100, deadline=None)
def test_parse_key_inverts_every_builder(cluster: str, name: str, namespace: str, numeric_id: int, ip: str) -> None:
    record = KeyType.RECORD
    assert keys.parse_key(keys.node_key(cluster, name)) == ParsedKey(record, Kind.NODES, cluster, name=name)
    assert keys.parse_key(keys.cached_service_key(cluster, namespace, name)) == ParsedKey(
        record, Kind.SERVICES, cluster, True, namespace, name
    )
    assert keys.parse_key(keys.identity_key(numeric_id)) == ParsedKey(record, Kind.IDENTITIES, identity=numeric_id)
    assert keys.parse_key(keys.cached_identity_key(cluster, numeric_id)) == ParsedKey(
        record, Kind.IDENTITIES, cluster, True, identity=numeric_id
    )
    assert keys.parse_key(keys.ip_key(ip)) == ParsedKey(record, Kind.IPCACHE, name=ip)
    assert keys.parse_key(keys.cached_ip_key(cluster, f"{ip}/8")) == ParsedKey(
        record, Kind.IPCACHE, cluster, True, name=f"{ip}/8"
    )
    assert keys.parse_key(keys.cluster_config_key(cluster)) == ParsedKey(KeyType.CLUSTER_CONFIG, cluster=cluster)
    for kind in Kind:
        for cached in (False, True):
            assert keys.parse_key(keys.synced_canary_key(cluster, kind, cached=cached)) == ParsedKey(
                KeyType.SYNCED_CANARY, kind, cluster, cached
            )


@given(st.text(max_size=60) | st.lists(segments, max_size=8).map(lambda parts: "/".join(["cilium", *parts])))
@settings(max_examples=200, deadline=None)
def test_parse_key_never_raises(key: str) -> None:
    parsed = keys.parse_key(key)
    assert parsed is None or isinstance(parsed, ParsedKey)


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"cilium/.initlock/", b"cilium/.initlock0"),
        (b"cilium/state/", b"cilium/state0"),
        (b"a\xff", b"b"),
        (b"a\xfe\xff\xff", b"a\xff"),
        (b"\xff\xff", b"\0"),
        (b"", b"\0"),
    ],
)
def test_prefix_range_end(prefix: bytes, end: bytes) -> None:
    assert keys.prefix_range_end(prefix) == end


@given(prefix=st.binary(min_size=1, max_size=8), suffix=st.binary(max_size=8), other=st.binary(max_size=12))
@settings(max_examples=200, deadline=None)
def test_prefix_range_covers_exactly_the_prefixed_keys(prefix: bytes, suffix: bytes, other: bytes) -> None:
    end = keys.prefix_range_end(prefix)
    key = prefix + suffix
    assert prefix <= key and (end == b"\0" or key < end)
    if end != b"\0":
        assert (prefix <= other < end) == other.startswith(prefix)


def test_subtree_prefix() -> None:
    assert keys.subtree_prefix(keys.STATE) == "cilium/state/"
    assert keys.subtree_prefix("cilium/state/") == "cilium/state/"
