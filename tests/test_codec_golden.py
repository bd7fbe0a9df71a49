"""Cilium's own values, byte for byte: every example in the wire reference, older variants, Go's escaping and
`omitempty` rules, and each validation rule of the decoders (reference §2, §5.5).

Values are the fixtures quoted in reference/cilium-clustermesh.md, joined onto one line because Go's
json.Marshal output is compact. Randomised round trips and fuzzing live in test_codec_properties.
"""

from __future__ import annotations

import datetime
import json

import pytest

from clustermesh import codec, keys
from clustermesh.errors import ConfigError, DecodeError
from clustermesh.keys import KeyType, Kind
from clustermesh.records import (
    CIDR,
    BackendZone,
    Capabilities,
    ClientIPConfig,
    ClusterConfig,
    ClusterService,
    ForZone,
    Identity,
    IPIdentityPair,
    L4Addr,
    NamedPort,
    Node,
    NodeAddress,
    ServiceExport,
    ServicePort,
    SessionAffinityConfig,
)

WG_KEY = "VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI="

# clustermesh-apiserver/clustermesh/testdata/ciliumnodes.txtar
NODE_JSON = (
    b'{"Name":"test-node-1","Cluster":"cluster3",'
    b'"IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.2"},{"Type":"InternalIP","IP":"fc00:c111::2"},'
    b'{"Type":"CiliumInternalIP","IP":"10.244.0.10"},{"Type":"CiliumInternalIP","IP":"fd00:10:244::e2d6"}],'
    b'"IPv4AllocCIDR":{"IP":"10.244.0.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":null,'
    b'"IPv6AllocCIDR":{"IP":"fd00:10:244::","Mask":"//////////8AAAAAAAAAAA=="},"IPv6SecondaryAllocCIDRs":null,'
    b'"IPv4HealthIP":"10.244.0.134","IPv6HealthIP":"fd00:10:244::d812","IPv4IngressIP":"","IPv6IngressIP":"",'
    b'"ClusterID":3,"Source":"custom-resource","EncryptionKey":0,'
    b'"Labels":{"kubernetes.io/hostname":"test-node-1"},'
    b'"Annotations":{"network.cilium.io/wg-pub-key":"VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI="},'
    b'"WireguardPubKey":"VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI=",'
    b'"BootID":"570d3fd1-93db-4862-ba99-6a3c2c10c38f"}'
)
NODE = Node(
    name="test-node-1",
    cluster="cluster3",
    ip_addresses=(
        NodeAddress(type="InternalIP", ip="172.18.0.2"),
        NodeAddress(type="InternalIP", ip="fc00:c111::2"),
        NodeAddress(type="CiliumInternalIP", ip="10.244.0.10"),
        NodeAddress(type="CiliumInternalIP", ip="fd00:10:244::e2d6"),
    ),
    ipv4_alloc_cidr=CIDR.parse("10.244.0.0/24"),
    ipv6_alloc_cidr=CIDR.parse("fd00:10:244::/64"),
    ipv4_health_ip="10.244.0.134",
    ipv6_health_ip="fd00:10:244::d812",
    cluster_id=3,
    source="custom-resource",
    labels={"kubernetes.io/hostname": "test-node-1"},
    annotations={"network.cilium.io/wg-pub-key": WG_KEY},
    wireguard_pub_key=WG_KEY,
    boot_id="570d3fd1-93db-4862-ba99-6a3c2c10c38f",
)
NODE_KEY = "cilium/state/nodes/v1/cluster3/test-node-1"

# clustermesh-apiserver/clustermesh/testdata/ciliumendpoints.txtar
IP_JSON = (
    b'{"IP":"10.244.2.74","HostIP":"172.18.0.2","ID":199475,"Key":5,"Metadata":"","K8sNamespace":"bar",'
    b'"K8sPodName":"cep-002","K8sPodUID":"cep-pod-uid","K8sServiceAccount":"default",'
    b'"NamedPorts":[{"Name":"http","Port":8080,"Protocol":"TCP"},{"Name":"dns","Port":53,"Protocol":"UDP"}]}'
)
IP_PAIR = IPIdentityPair(
    ip="10.244.2.74",
    host_ip="172.18.0.2",
    id=199475,
    key=5,
    k8s_namespace="bar",
    k8s_pod_name="cep-002",
    k8s_pod_uid="cep-pod-uid",
    k8s_service_account="default",
    named_ports=(NamedPort(name="http", port=8080, protocol="TCP"), NamedPort(name="dns", port=53, protocol="UDP")),
)
IP_KEY = "cilium/state/ip/v1/default/10.244.2.74"

# clustermesh-apiserver/clustermesh/testdata/globalnamespace-services.txtar
SERVICE_JSON = (
    b'{"cluster":"cluster3","namespace":"ns-alpha","name":"echo-service",'
    b'"frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":80}}},'
    b'"backends":{"10.244.1.10":{"http":{"Protocol":"TCP","Port":8080}}},'
    b'"labels":{},"selector":{"app":"echo"},"includeExternal":true,"shared":true,"clusterID":3}'
)
SERVICE = ClusterService(
    cluster="cluster3",
    namespace="ns-alpha",
    name="echo-service",
    frontends={"10.96.0.10": {"http": L4Addr(protocol="TCP", port=80)}},
    backends={"10.244.1.10": {"http": L4Addr(protocol="TCP", port=8080)}},
    labels={},
    selector={"app": "echo"},
    include_external=True,
    shared=True,
    cluster_id=3,
)
SERVICE_KEY = "cilium/state/services/v1/cluster3/ns-alpha/echo-service"

# clustermesh-apiserver/clustermesh/testdata/serviceexports.txtar
EXPORT_JSON = (
    b'{"cluster":"cluster1","name":"basic","namespace":"default","annotations":{"my-annotation":"foo"},'
    b'"labels":{"my-label":"test"},"exportCreationTimestamp":"2026-01-01T00:00:00Z",'
    b'"ports":[{"name":"my-port-1","protocol":"TCP","port":80}],"type":"ClusterSetIP",'
    b'"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":42}}}'
)
EXPORT = ServiceExport(
    cluster="cluster1",
    name="basic",
    namespace="default",
    annotations={"my-annotation": "foo"},
    labels={"my-label": "test"},
    export_creation_timestamp="2026-01-01T00:00:00Z",
    ports=(ServicePort(name="my-port-1", protocol="TCP", port=80),),
    type="ClusterSetIP",
    session_affinity="ClientIP",
    session_affinity_config=SessionAffinityConfig(client_ip=ClientIPConfig(timeout_seconds=42)),
)
EXPORT_KEY = "cilium/state/serviceexports/v1/cluster1/default/basic"

# clustermesh-apiserver/clustermesh/testdata/clusterconfig.txtar (compared there as JSON, hence the spaces).
CONFIG_FIXTURE = (
    b'{"id": 3, "capabilities": {"syncedCanaries": true, "maxConnectedClusters": 255, "serviceExportsEnabled": false}}'
)
CONFIG_JSON = (
    b'{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":false}}'
)
CONFIG = ClusterConfig(
    id=3, capabilities=Capabilities(synced_canaries=True, max_connected_clusters=255, service_exports_enabled=False)
)
CONFIG_KEY = "cilium/cluster-config/cluster3"

# clustermesh-apiserver/clustermesh/testdata/ciliumidentitites.txtar
IDENTITY_VALUE = b"k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster3;k8s:io.kubernetes.pod.namespace=bar;"
IDENTITY_KEY = "cilium/state/identities/v1/id/196915"


def decode_node(data: bytes, key: str = NODE_KEY, cluster_id: int | None = 3) -> Node:
    return codec.decode_node(key, data, cluster="cluster3", cluster_id=cluster_id)


def decode_ip(data: bytes, key: str = IP_KEY, cluster_id: int | None = 3) -> IPIdentityPair:
    return codec.decode_ip_identity(key, data, cluster=None, cluster_id=cluster_id)


def decode_service(data: bytes, key: str = SERVICE_KEY) -> ClusterService:
    return codec.decode_service(key, data, cluster="cluster3", cluster_id=3)


def decode_export(data: bytes, key: str = EXPORT_KEY) -> ServiceExport:
    return codec.decode_service_export(key, data, cluster="cluster1")


def with_member(data: bytes, **changes: object) -> bytes:
    value = json.loads(data)
    value.update(changes)
    return json.dumps(value).encode()


# ---------------------------------------------------------------------------------------------------------------
# Reference examples, both directions


@pytest.mark.parametrize(
    ("record", "data"),
    [(NODE, NODE_JSON), (IP_PAIR, IP_JSON), (SERVICE, SERVICE_JSON), (EXPORT, EXPORT_JSON), (CONFIG, CONFIG_JSON)],
    ids=["node", "ipcache", "service", "service-export", "cluster-config"],
)
def test_encode_reproduces_ciliums_bytes(record: object, data: bytes) -> None:
    assert codec.encode(record) == data  # type: ignore[arg-type]


def test_examples_decode_to_the_records() -> None:
    assert decode_node(NODE_JSON) == NODE
    assert decode_ip(IP_JSON) == IP_PAIR
    assert decode_service(SERVICE_JSON) == SERVICE
    assert decode_export(EXPORT_JSON) == EXPORT
    assert codec.decode_cluster_config(CONFIG_KEY, CONFIG_JSON, cluster="cluster3") == CONFIG


def test_cluster_config_fixture_with_spaces_decodes_and_reencodes_compact() -> None:
    config = codec.decode_cluster_config(CONFIG_KEY, CONFIG_FIXTURE, cluster="cluster3")
    assert config == CONFIG
    assert codec.encode(config) == CONFIG_JSON


def test_identity_value_is_the_label_string() -> None:
    identity = Identity.from_labels(
        196915,
        {"app": "baz", "io.kubernetes.pod.namespace": "bar", "io.cilium.k8s.policy.cluster": "cluster3"},
    )
    assert codec.encode(identity) == IDENTITY_VALUE
    decoded = codec.decode_identity(IDENTITY_KEY, IDENTITY_VALUE, cluster="cluster3", cluster_id=3)
    assert decoded == identity


def test_heartbeat_and_canary_timestamps_are_rfc3339() -> None:
    moment = codec.decode_timestamp(keys.HEARTBEAT_KEY, b"2024-07-07T15:55:07+02:00")
    assert moment == datetime.datetime(2024, 7, 7, 13, 55, 7, tzinfo=datetime.UTC)
    assert codec.encode_timestamp(moment) == b"2024-07-07T15:55:07+02:00"
    utc = datetime.datetime(2026, 1, 1, 0, 0, 0, 999999, tzinfo=datetime.UTC)
    assert codec.encode_timestamp(utc) == b"2026-01-01T00:00:00Z"
    west = datetime.timezone(-datetime.timedelta(hours=3, minutes=30))
    assert codec.encode_timestamp(utc.astimezone(west)) == b"2025-12-31T20:30:00-03:30"
    # Go writes whole seconds but parses fractions up to nanoseconds.
    nanos = codec.decode_timestamp("k", b"2024-07-07T15:55:07.123456789Z")
    assert nanos.microsecond == 123456
    with pytest.raises(ValueError, match="timezone-aware"):
        codec.encode_timestamp(datetime.datetime(2024, 1, 1))


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"now",
        b"2024-07-07",
        b"2024-07-07 15:55:07Z",
        b"2024-07-07T15:55:07",
        b"2024-13-07T15:55:07Z",
        b"2024-07-07T25:55:07Z",
        b"2024-07-07T15:55:60Z",
        b"2024-07-07T15:55:07+24:00",
        b"2024-07-07t15:55:07z",
        "2024-07-07T15:55:07\u00b2Z".encode(),
        b"\xff",
    ],
)
def test_invalid_timestamps(value: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode_timestamp(keys.HEARTBEAT_KEY, value)
    assert info.value.key == keys.HEARTBEAT_KEY


# ---------------------------------------------------------------------------------------------------------------
# Older variants and minimal objects


def test_older_node_with_node_identity_and_without_annotations_or_boot_id() -> None:
    # Shaped as ≈v1.12 wrote it: a NodeIdentity member, no Annotations, no BootID.
    older = (
        b'{"Name":"test-node-1","Cluster":"cluster3","IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.2"}],'
        b'"IPv4AllocCIDR":{"IP":"10.244.0.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":null,'
        b'"IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"10.244.0.134","IPv6HealthIP":"",'
        b'"IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":3,"Source":"custom-resource","EncryptionKey":0,'
        b'"Labels":{},"NodeIdentity":0,"WireguardPubKey":""}'
    )
    node = decode_node(older)
    assert node.annotations is None and node.boot_id == ""
    assert node.ipv6_alloc_cidr is None and node.labels == {}
    assert codec.encode(node) == older.replace(
        b'"NodeIdentity":0,"WireguardPubKey":""', b'"Annotations":null,"WireguardPubKey":"","BootID":""'
    )


def test_older_ipcache_entry_with_null_mask() -> None:
    # globalnamespace.txtar (older): `"Mask": null` right after IP; newest Cilium omits it.
    older = (
        b'{"IP":"10.244.2.74","Mask":null,"HostIP":"172.18.0.2","ID":199475,"Key":0,"Metadata":"",'
        b'"K8sNamespace":"bar","K8sPodName":"cep-002"}'
    )
    pair = decode_ip(older)
    assert pair.mask is None and pair.k8s_pod_uid == "" and pair.named_ports is None
    assert codec.encode(pair) == older.replace(b'"Mask":null,', b"")


def test_minimal_service_as_cilium_readers_accept_it() -> None:
    # pkg/clustermesh/testdata/clusterservice.txtar
    minimal = (
        b'{"name":"echo","namespace":"test","includeExternal":true,"shared":true,"cluster":"cluster2",'
        b'"clusterID":2,"backends":{"20.0.0.2":{"tcp":{"Protocol":"TCP","Port":9090}}}}'
    )
    service = codec.decode_service(
        "cilium/state/services/v1/cluster2/test/echo", minimal, cluster="cluster2", cluster_id=2
    )
    assert service == ClusterService(
        cluster="cluster2",
        namespace="test",
        name="echo",
        backends={"20.0.0.2": {"tcp": L4Addr(protocol="TCP", port=9090)}},
        include_external=True,
        shared=True,
        cluster_id=2,
    )
    assert codec.encode(service) == (
        b'{"cluster":"cluster2","namespace":"test","name":"echo","frontends":null,'
        b'"backends":{"20.0.0.2":{"tcp":{"Protocol":"TCP","Port":9090}}},"labels":null,"selector":null,'
        b'"includeExternal":true,"shared":true,"clusterID":2}'
    )


def test_headless_export_with_empty_session_affinity() -> None:
    headless = EXPORT_JSON.replace(b'"ClusterSetIP"', b'"Headless"').replace(
        b'"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":42}}',
        b'"sessionAffinity":""',
    )
    export = decode_export(headless)
    assert (export.type, export.session_affinity, export.session_affinity_config) == ("Headless", "", None)
    assert codec.encode(export) == headless


def test_unknown_members_are_ignored() -> None:
    assert decode_node(with_member(NODE_JSON, Future={"x": [1, 2]})) == NODE
    assert decode_service(with_member(SERVICE_JSON, future=None)) == SERVICE
    config = with_member(CONFIG_JSON, capabilities={"syncedCanaries": True, "endpointSlicesExportMode": "x"})
    assert codec.decode_cluster_config(CONFIG_KEY, config, cluster="cluster3").capabilities == Capabilities(
        synced_canaries=True
    )


# ---------------------------------------------------------------------------------------------------------------
# Go's encoding rules


def test_go_html_escaping_and_line_separators() -> None:
    node = Node(name="n", labels={"a<b": "x&y>z", "ls": "\u2028\u2029"}, source="<>&")
    assert codec.encode(node) == (
        b'{"Name":"n","Cluster":"","IPAddresses":null,"IPv4AllocCIDR":null,"IPv4SecondaryAllocCIDRs":null,'
        b'"IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv6HealthIP":"",'
        b'"IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":0,"Source":"\\u003c\\u003e\\u0026","EncryptionKey":0,'
        b'"Labels":{"a\\u003cb":"x\\u0026y\\u003ez","ls":"\\u2028\\u2029"},"Annotations":null,'
        b'"WireguardPubKey":"","BootID":""}'
    )


def test_go_string_escapes() -> None:
    # Go escapes \b \f \n \r \t, other controls as lowercase \u00xx, keeps DEL, `/` and non-ASCII as UTF-8.
    text = '\x00\x01\b\t\n\x0b\f\r\x1f\x7f/\\"é😀'
    data = codec.encode(IPIdentityPair(ip="10.0.0.1", metadata=text))
    expected = '"Metadata":"\\u0000\\u0001\\b\\t\\n\\u000b\\f\\r\\u001f\x7f/\\\\\\"é😀"'.encode()
    assert expected in data
    assert decode_ip(data, key="cilium/state/ip/v1/default/10.0.0.1", cluster_id=None).metadata == text


def test_map_keys_are_sorted_as_go_sorts_them() -> None:
    # Go sorts map keys by their UTF-8 bytes, i.e. by code point; struct members keep declaration order.
    labels = {"b": "", "a": "", "B": "", "é": "", "😀": "", "\uffff": "", "a0": "", "": ""}
    tree = codec.to_jsonable(Node(labels=labels))
    assert isinstance(tree, dict)
    assert list(tree["Labels"]) == ["", "B", "a", "a0", "b", "é", "\uffff", "😀"]
    assert list(tree)[:2] == ["Name", "Cluster"]


def test_nil_and_empty_collections_are_distinct() -> None:
    # Go: a nil slice or map is null, an empty one [] / {}; an empty IP is "".
    assert b'"IPAddresses":null' in codec.encode(Node())
    assert b'"IPAddresses":[]' in codec.encode(Node(ip_addresses=()))
    assert b'"Labels":{}' in codec.encode(Node(labels={}))
    assert decode_node(codec.encode(NODE), cluster_id=3).ipv4_secondary_alloc_cidrs is None


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (IPIdentityPair(ip="10.0.0.1"), b'{"IP":"10.0.0.1","HostIP":"","ID":0,"Key":0,"Metadata":""}'),
        (
            IPIdentityPair(ip="10.0.0.1", mask=b"", named_ports=()),
            b'{"IP":"10.0.0.1","HostIP":"","ID":0,"Key":0,"Metadata":""}',
        ),
        (
            IPIdentityPair(ip="10.0.0.0", mask=b"\xff\x00\x00\x00", id=2),
            b'{"IP":"10.0.0.0","Mask":"/wAAAA==","HostIP":"","ID":2,"Key":0,"Metadata":""}',
        ),
        (ClusterConfig(), b'{"capabilities":{}}'),
        (ClusterConfig(id=7, capabilities=Capabilities(cached=True)), b'{"id":7,"capabilities":{"cached":true}}'),
        (
            ClusterService(hostnames={}, zones={"10.0.0.1": BackendZone(zone="a", for_zones=(ForZone(name="b"),))}),
            b'{"cluster":"","namespace":"","name":"","frontends":null,"backends":null,'
            b'"zones":{"10.0.0.1":{"zone":"a","forZones":[{"name":"b"}]}},"labels":null,"selector":null,'
            b'"includeExternal":false,"shared":false,"clusterID":0}',
        ),
        (
            ServiceExport(
                annotations={},
                ports=(ServicePort(port=80), ServicePort(name="p", protocol="UDP", app_protocol="", port=53)),
                session_affinity_config=SessionAffinityConfig(client_ip=ClientIPConfig(timeout_seconds=0)),
                ip_families=(),
                internal_traffic_policy="Local",
            ),
            b'{"cluster":"","name":"","namespace":"","exportCreationTimestamp":null,'
            b'"ports":[{"port":80},{"name":"p","protocol":"UDP","appProtocol":"","port":53}],"type":"",'
            b'"sessionAffinity":"","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":0}},'
            b'"internalTrafficPolicy":"Local"}',
        ),
        (
            ServiceExport(session_affinity_config=SessionAffinityConfig()),
            b'{"cluster":"","name":"","namespace":"","exportCreationTimestamp":null,"ports":null,"type":"",'
            b'"sessionAffinity":"","sessionAffinityConfig":{}}',
        ),
    ],
    ids=[
        "ip-minimal",
        "ip-empty-mask-and-ports",
        "ip-cidr",
        "config-empty",
        "config-cached",
        "service-zones",
        "export-pointers",
        "export-empty-affinity",
    ],
)
def test_omitempty_follows_go(record: object, expected: bytes) -> None:
    # omitempty drops zero values, empty strings, empty or nil slices and maps, and nil pointers; never structs
    # or non-nil pointers (a pointer to false, "" or 0 stays).
    assert codec.encode(record) == expected  # type: ignore[arg-type]


def test_encode_refuses_non_records_and_invalid_unicode() -> None:
    with pytest.raises(TypeError):
        codec.encode(NodeAddress())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        codec.encode(Node(name="\ud800"))
    with pytest.raises(TypeError):
        codec.to_jsonable(object())


def test_to_jsonable() -> None:
    assert codec.to_jsonable(CONFIG) == json.loads(CONFIG_JSON)
    assert json.dumps(codec.to_jsonable(IP_PAIR), separators=(",", ":")).encode() == IP_JSON
    assert codec.to_jsonable(Identity(id=5, labels="k8s:a=b;")) == "k8s:a=b;"
    assert codec.to_jsonable(datetime.datetime(2024, 7, 7, tzinfo=datetime.UTC)) == "2024-07-07T00:00:00Z"
    assert json.dumps(codec.to_jsonable(NODE), separators=(",", ":")).encode() == NODE_JSON


# ---------------------------------------------------------------------------------------------------------------
# Validation: each rule rejects with a reason naming what is wrong, and the key


def assert_rejected(call: object, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        (b"", NODE_KEY, "invalid value"),
        (b"[]", NODE_KEY, "Expected `object`"),
        (b'{"Name":"test-node-1","Cluster":"cluster3","ClusterID":"3"}', NODE_KEY, r"\$.ClusterID"),
        (b'{"Name":"test-node-1","Cluster":"cluster3","EncryptionKey":256}', NODE_KEY, "EncryptionKey"),
        (NODE_JSON, "cilium/state/nodes/v1/cluster3/other", "name does not match key"),
        (NODE_JSON, "cilium/state/nodes/v1/cluster4/test-node-1", "key belongs to another cluster"),
        (NODE_JSON, "cilium/state/services/v1/cluster3/ns/test-node-1", "not a key of nodes"),
        (with_member(NODE_JSON, Cluster="cluster4"), NODE_KEY, "unexpected cluster name"),
        (with_member(NODE_JSON, ClusterID=4), NODE_KEY, "unexpected cluster ID: got 4, expected 3"),
        (with_member(NODE_JSON, IPv4HealthIP="10.0.0.256"), NODE_KEY, "invalid IP address '10.0.0.256'"),
        (with_member(NODE_JSON, IPAddresses=[{"Type": "InternalIP", "IP": "fe80::1%eth0"}]), NODE_KEY, "IPAddresses"),
        (with_member(NODE_JSON, IPv4AllocCIDR={"IP": "10.0.0.0", "Mask": "/wD/AA=="}), NODE_KEY, "not contiguous"),
        (with_member(NODE_JSON, IPv6AllocCIDR={"IP": "fd00::", "Mask": "////AA=="}), NODE_KEY, "does not fit"),
        (with_member(NODE_JSON, IPv4SecondaryAllocCIDRs=[{"IP": "x", "Mask": "////AA=="}]), NODE_KEY, "CIDR"),
        (with_member(NODE_JSON, IPv4SecondaryAllocCIDRs=[None]), NODE_KEY, "Expected `object`, got `null`"),
        (b"[" * 5000 + b"]" * 5000, NODE_KEY, "invalid value"),
        (b'{"Name":"\xff"}', NODE_KEY, "invalid value"),
        (b'{"Name":"\\ud800"}', NODE_KEY, "invalid value"),
    ],
)
def test_node_validation(data: bytes, key: str, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        decode_node(data, key)
    assert info.value.key == key


def test_node_cluster_id_is_not_checked_when_unknown() -> None:
    assert decode_node(with_member(NODE_JSON, ClusterID=9), cluster_id=None).cluster_id == 9


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        (with_member(SERVICE_JSON, cluster=""), SERVICE_KEY, "cluster is unset"),
        (with_member(SERVICE_JSON, namespace=""), SERVICE_KEY, "namespace is unset"),
        (with_member(SERVICE_JSON, name=""), SERVICE_KEY, "name is unset"),
        (SERVICE_JSON, "cilium/state/services/v1/cluster3/ns-alpha/other", "namespaced name does not match key"),
        (SERVICE_JSON, "cilium/state/services/v1/cluster3/other/echo-service", "namespaced name does not match"),
        (with_member(SERVICE_JSON, cluster="cluster4"), SERVICE_KEY, "unexpected cluster name"),
        (with_member(SERVICE_JSON, clusterID=0), SERVICE_KEY, "unexpected cluster ID"),
        (with_member(SERVICE_JSON, frontends={"fe80::1%eth0": {}}), SERVICE_KEY, "frontends: invalid IP"),
        (with_member(SERVICE_JSON, backends={"backend": {}}), SERVICE_KEY, "backends: invalid IP"),
        (with_member(SERVICE_JSON, backends={"10.0.0.1": {"http": None}}), SERVICE_KEY, "got `null`"),
        (with_member(SERVICE_JSON, backends={"10.0.0.1": {"http": {"Port": 65536}}}), SERVICE_KEY, "Port"),
    ],
)
def test_service_validation(data: bytes, key: str, reason: str) -> None:
    assert_rejected(lambda: decode_service(data, key), reason)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (with_member(EXPORT_JSON, cluster="cluster2"), "unexpected cluster name"),
        (with_member(EXPORT_JSON, name="other"), "namespaced name does not match key"),
        (with_member(EXPORT_JSON, exportCreationTimestamp=None), "exportCreationTimestamp is unset"),
        (with_member(EXPORT_JSON, exportCreationTimestamp="yesterday"), "not RFC 3339"),
        (with_member(EXPORT_JSON, type="LoadBalancer"), "type is unknown"),
        (with_member(EXPORT_JSON, sessionAffinity="Sticky"), "session affinity is unknown"),
        (with_member(EXPORT_JSON, internalTrafficPolicy="Node"), "internal traffic policy is unknown"),
        (with_member(EXPORT_JSON, trafficDistribution="Anywhere"), "traffic distribution is unknown"),
    ],
)
def test_service_export_validation(data: bytes, reason: str) -> None:
    assert_rejected(lambda: decode_export(data), reason)


def test_ipcache_identity_range() -> None:
    # A peer's entries carry its own identities or reserved ones (< 256); anything else is skipped.
    assert decode_ip(with_member(IP_JSON, ID=2)).id == 2
    assert decode_ip(with_member(IP_JSON, ID=255)).id == 255
    assert decode_ip(with_member(IP_JSON, ID=262143)).id == 262143
    assert_rejected(
        lambda: decode_ip(with_member(IP_JSON, ID=262144)),
        "ID 262144 does not belong to the allocation range of cluster ID 3",
    )
    assert_rejected(lambda: decode_ip(with_member(IP_JSON, ID=256)), "allocation range")
    assert decode_ip(with_member(IP_JSON, ID=262144), cluster_id=None).id == 262144
    extended = codec.decode_ip_identity(
        IP_KEY, with_member(IP_JSON, ID=98304), cluster=None, cluster_id=3, max_clusters=511
    )
    assert extended.id == 98304
    with pytest.raises(ConfigError):
        codec.decode_ip_identity(IP_KEY, IP_JSON, cluster=None, cluster_id=3, max_clusters=1000)


def test_ipcache_host_identity_is_read_as_remote_node() -> None:
    assert decode_ip(with_member(IP_JSON, ID=1)).id == 6
    # decode_any shows what is stored.
    assert codec.decode_any(IP_KEY, with_member(IP_JSON, ID=1))[1] == IPIdentityPair(
        **{**{f: getattr(IP_PAIR, f) for f in IP_PAIR.__struct_fields__}, "id": 1}
    )


def test_ipcache_key_matches_ip_even_when_not_canonical() -> None:
    mapped = with_member(IP_JSON, IP="::ffff:10.244.2.74")
    assert decode_ip(mapped).ip == "::ffff:10.244.2.74"
    cidr_key = "cilium/state/ip/v1/default/10.0.0.0/8"
    cidr = with_member(IP_JSON, IP="10.0.0.0", Mask="/wAAAA==")
    assert decode_ip(cidr, key=cidr_key).prefix_string == "10.0.0.0/8"
    assert_rejected(lambda: decode_ip(cidr, key="cilium/state/ip/v1/default/10.0.0.0/16"), "IP does not match")
    assert_rejected(lambda: decode_ip(cidr), "IP does not match key")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (with_member(IP_JSON, IP=""), "IP: invalid IP address ''"),
        (with_member(IP_JSON, IP="10.244.2.74%eth0"), "IP: invalid IP"),
        (with_member(IP_JSON, IP="10.244.2.75"), "IP does not match key"),
        (with_member(IP_JSON, HostIP="node-1"), "HostIP: invalid IP"),
        (with_member(IP_JSON, Mask="/w=="), "Mask of 1 bytes"),
        (with_member(IP_JSON, Mask="%%%"), "Invalid base64"),
        (with_member(IP_JSON, ID=-1), r"\$.ID"),
        (with_member(IP_JSON, ID=2**32), r"\$.ID"),
        (with_member(IP_JSON, ID=1.0), r"Expected `int`, got `float`"),
        (with_member(IP_JSON, Key=256), r"\$.Key"),
        (with_member(IP_JSON, NamedPorts=[{"Port": -1}]), r"NamedPorts\[0\].Port"),
    ],
)
def test_ipcache_validation(data: bytes, reason: str) -> None:
    assert_rejected(lambda: decode_ip(data), reason)


def test_ipcache_cached_key_belongs_to_the_cluster() -> None:
    cached = "cilium/cache/ip/v1/cluster3/10.244.2.74"
    assert codec.decode_ip_identity(cached, IP_JSON, cluster="cluster3", cluster_id=3) == IP_PAIR
    assert_rejected(
        lambda: codec.decode_ip_identity(cached, IP_JSON, cluster="cluster4", cluster_id=3),
        "key belongs to another cluster",
    )


def test_decoded_ipcache_entries_share_repeated_strings() -> None:
    first = decode_ip(IP_JSON)
    second = decode_ip(IP_JSON)
    assert first.host_ip is second.host_ip
    assert first.k8s_namespace is second.k8s_namespace


def test_identity_validation() -> None:
    def decode(
        key: str = IDENTITY_KEY,
        value: bytes = IDENTITY_VALUE,
        *,
        cluster: str | None = "cluster3",
        cluster_id: int | None = 3,
    ) -> Identity:
        return codec.decode_identity(key, value, cluster=cluster, cluster_id=cluster_id)

    assert decode().id == 196915
    assert decode(cluster=None, cluster_id=None).labels == IDENTITY_VALUE.decode()
    assert_rejected(lambda: decode(cluster_id=4), "ID 196915 does not belong to the allocation range of cluster ID 4")
    assert_rejected(lambda: decode("cilium/state/identities/v1/id/5"), "allocation range")
    assert_rejected(lambda: decode(cluster="cluster4"), "unexpected cluster name: got 'cluster3', expected 'cluster4'")
    assert_rejected(lambda: decode(value=b"k8s:app=baz;"), "could not find expected label")
    no_source = b"any:io.cilium.k8s.policy.cluster=cluster3;"
    assert_rejected(lambda: decode(value=no_source), "unexpected source for cluster label")
    assert_rejected(lambda: decode(value=b""), "invalid label string: empty")
    assert_rejected(lambda: decode(value=b"k8s:app=baz"), "must end with ';'")
    assert_rejected(lambda: decode(value=b"\xff;"), "not valid UTF-8")
    assert_rejected(lambda: decode("cilium/state/identities/v1/id/0196915"), "not a key of identities")
    cached = "cilium/cache/identities/v1/cluster3/id/196915"
    assert decode(cached).id == 196915
    assert_rejected(lambda: decode(cached, cluster="cluster4"), "key belongs to another cluster")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"id":0,"capabilities":{}}', "ClusterID 0 is reserved"),
        (b'{"capabilities":{"syncedCanaries":true}}', "ClusterID 0 is reserved"),
        (b'{"id":256}', "ClusterID > 255 is not supported"),
        (b'{"id":512,"capabilities":{"maxConnectedClusters":511}}', "ClusterID > 511 is not supported"),
        (b'{"id":3,"capabilities":{"maxConnectedClusters":300}}', r"--max-connected-clusters=300 is invalid"),
        (b'{"id":"3"}', r"\$.id"),
        (b"null", "Expected `object`"),
    ],
)
def test_cluster_config_validation(data: bytes, reason: str) -> None:
    assert_rejected(lambda: codec.decode_cluster_config(CONFIG_KEY, data, cluster="cluster3"), reason)


def test_cluster_config_key_must_be_the_clusters() -> None:
    assert_rejected(
        lambda: codec.decode_cluster_config(CONFIG_KEY, CONFIG_JSON, cluster="cluster4"),
        "key belongs to another cluster",
    )
    assert_rejected(lambda: codec.decode_cluster_config(NODE_KEY, CONFIG_JSON, cluster="cluster3"), "not a")
    extended = codec.decode_cluster_config(
        CONFIG_KEY, b'{"id":300,"capabilities":{"maxConnectedClusters":511}}', cluster="cluster3"
    )
    assert (extended.id, extended.max_clusters) == (300, 511)


# ---------------------------------------------------------------------------------------------------------------
# decode_any: what `clustermesh kv` shows


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (NODE_KEY, NODE_JSON, NODE),
        (NODE_KEY.replace("state", "cache"), NODE_JSON, NODE),
        (SERVICE_KEY, SERVICE_JSON, SERVICE),
        (EXPORT_KEY, EXPORT_JSON, EXPORT),
        (IP_KEY, IP_JSON, IP_PAIR),
        ("cilium/cache/ip/v1/cluster3/10.244.2.74", IP_JSON, IP_PAIR),
        (IDENTITY_KEY, IDENTITY_VALUE, Identity(id=196915, labels=IDENTITY_VALUE.decode())),
        ("cilium/cache/identities/v1/cluster3/id/7", IDENTITY_VALUE, Identity(id=7, labels=IDENTITY_VALUE.decode())),
        (CONFIG_KEY, CONFIG_FIXTURE, CONFIG),
        (keys.HEARTBEAT_KEY, b"2024-07-07T15:55:07Z", datetime.datetime(2024, 7, 7, 15, 55, 7, tzinfo=datetime.UTC)),
        (
            keys.synced_canary_key("cluster3", Kind.NODES),
            b"2024-07-07T15:55:07Z",
            datetime.datetime(2024, 7, 7, 15, 55, 7, tzinfo=datetime.UTC),
        ),
    ],
)
def test_decode_any(key: str, value: bytes, expected: object) -> None:
    parsed, record = codec.decode_any(key, value)
    assert parsed == keys.parse_key(key)
    assert record == expected


def test_decode_any_uses_what_the_key_says() -> None:
    # The cluster comes from the key (so a record of another cluster is invalid there), the cluster ID is
    # unknown (so it is not checked).
    assert_rejected(
        lambda: codec.decode_any("cilium/state/nodes/v1/cluster4/test-node-1", NODE_JSON), "unexpected cluster name"
    )
    assert codec.decode_any(NODE_KEY, with_member(NODE_JSON, ClusterID=99))[1].cluster_id == 99  # type: ignore[attr-defined]
    assert_rejected(
        lambda: codec.decode_any("cilium/cache/identities/v1/cluster4/id/7", IDENTITY_VALUE), "unexpected cluster name"
    )
    parsed, _ = codec.decode_any(keys.synced_canary_key("c", Kind.IDENTITIES, cached=True), b"2024-07-07T15:55:07Z")
    assert (parsed.type, parsed.kind, parsed.cached) == (KeyType.SYNCED_CANARY, Kind.IDENTITIES, True)


@pytest.mark.parametrize(
    "key", ["", "cilium/state/identities/v1/value/k8s:a=b;/10.0.0.1", "cilium/.initlock", "other/key"]
)
def test_decode_any_refuses_unknown_keys(key: str) -> None:
    assert_rejected(lambda: codec.decode_any(key, b"{}"), "not a key of Cluster Mesh")
