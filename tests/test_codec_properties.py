"""Randomised codec properties: valid records round-trip exactly, and no input makes a decoder raise anything
but DecodeError.

Valid records are generated in canonical form (an `omitempty` collection is None or non-empty), which is what
decoding yields, so decode(encode(r)) == r exactly; encode(decode(encode(r))) == encode(r) holds regardless.
Hand-picked wire examples live in test_codec_golden.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from clustermesh import codec, identity, keys, records
from clustermesh.errors import DecodeError

SETTINGS = settings(max_examples=200, deadline=None)

# Any text Go can carry (valid UTF-8: no lone surrogates), biased towards what Go escapes.
texts = st.text(st.characters(codec="utf-8") | st.sampled_from('<>&\u2028\u2029"\\\n\x00\x7f'), max_size=12)
segments = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=12)
ips = st.ip_addresses().map(str)
ips_or_empty = st.one_of(st.just(""), ips)
uint8 = st.integers(0, 0xFF)
uint16 = st.integers(0, 0xFFFF)
uint32 = st.integers(0, 0xFFFF_FFFF)
int32 = st.integers(-(2**31), 2**31 - 1)
string_maps = st.dictionaries(texts, texts, max_size=4)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def tuples(strategy: st.SearchStrategy[Any], *, min_size: int = 0) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(strategy, min_size=min_size, max_size=3).map(tuple)


@st.composite
def cidrs(draw: st.DrawFn, version: Literal[4, 6]) -> records.CIDR:
    address = draw(st.ip_addresses(v=version))
    return records.CIDR.parse(f"{address}/{draw(st.integers(0, address.max_prefixlen))}")


nodes = st.builds(
    records.Node,
    name=segments,
    cluster=segments,
    ip_addresses=optional(tuples(st.builds(records.NodeAddress, type=texts, ip=ips_or_empty))),
    ipv4_alloc_cidr=optional(cidrs(4)),
    ipv4_secondary_alloc_cidrs=optional(tuples(cidrs(4))),
    ipv6_alloc_cidr=optional(cidrs(6)),
    ipv6_secondary_alloc_cidrs=optional(tuples(cidrs(6))),
    ipv4_health_ip=ips_or_empty,
    ipv6_health_ip=ips_or_empty,
    ipv4_ingress_ip=ips_or_empty,
    ipv6_ingress_ip=ips_or_empty,
    cluster_id=uint32,
    source=texts,
    encryption_key=uint8,
    labels=optional(string_maps),
    annotations=optional(string_maps),
    wireguard_pub_key=texts,
    boot_id=texts,
)

port_configurations = st.dictionaries(texts, st.builds(records.L4Addr, protocol=texts, port=uint16), max_size=3)
zones = st.builds(records.BackendZone, zone=texts, for_zones=optional(tuples(st.builds(records.ForZone, name=texts))))
services = st.builds(
    records.ClusterService,
    cluster=segments,
    namespace=segments,
    name=segments,
    frontends=optional(st.dictionaries(ips, port_configurations, max_size=3)),
    backends=optional(st.dictionaries(ips, port_configurations, max_size=3)),
    hostnames=optional(st.dictionaries(ips, texts, min_size=1, max_size=3)),
    zones=optional(st.dictionaries(ips, zones, min_size=1, max_size=3)),
    labels=optional(string_maps),
    selector=optional(string_maps),
    include_external=st.booleans(),
    shared=st.booleans(),
    cluster_id=uint32,
)

offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: datetime.timezone(datetime.timedelta(minutes=m)))
timestamps = st.builds(
    lambda moment, zone: moment.replace(microsecond=0, tzinfo=datetime.UTC).astimezone(zone),
    st.datetimes(min_value=datetime.datetime(1, 1, 2), max_value=datetime.datetime(9999, 12, 30)),
    offsets,
)

service_exports = st.builds(
    records.ServiceExport,
    cluster=segments,
    name=segments,
    namespace=segments,
    annotations=optional(st.dictionaries(texts, texts, min_size=1, max_size=3)),
    labels=optional(st.dictionaries(texts, texts, min_size=1, max_size=3)),
    export_creation_timestamp=timestamps.map(lambda moment: codec.encode_timestamp(moment).decode()),
    ports=optional(
        tuples(st.builds(records.ServicePort, name=texts, protocol=texts, app_protocol=optional(texts), port=int32))
    ),
    type=st.sampled_from(["ClusterSetIP", "Headless"]),
    session_affinity=st.sampled_from(["", "None", "ClientIP"]),
    session_affinity_config=optional(
        st.builds(
            records.SessionAffinityConfig,
            client_ip=optional(st.builds(records.ClientIPConfig, timeout_seconds=optional(int32))),
        )
    ),
    ip_families=optional(tuples(texts, min_size=1)),
    internal_traffic_policy=optional(st.sampled_from(["Cluster", "Local"])),
    traffic_distribution=optional(st.sampled_from(["PreferClose", "PreferSameZone", "PreferSameNode"])),
)

cluster_ids = st.integers(1, 255)
cluster_names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?", fullmatch=True)
modes = st.sampled_from([0, 255, 511])


@st.composite
def identity_numbers(draw: st.DrawFn, cluster_id: int, *, reserved: bool) -> int:
    own = st.integers(identity.min_identity(cluster_id), identity.max_identity(cluster_id))
    # Host (1) is read as remote-node; it gets its own test.
    return draw(st.integers(2, 255) | own if reserved else own)


@st.composite
def ip_identities(draw: st.DrawFn, cluster_id: int) -> records.IPIdentityPair:
    address = draw(st.ip_addresses())
    mask = None
    if draw(st.booleans()):
        mask = records.CIDR.parse(f"{address}/{draw(st.integers(0, address.max_prefixlen))}").mask
    return records.IPIdentityPair(
        ip=str(address),
        mask=mask,
        host_ip=draw(ips_or_empty),
        id=draw(identity_numbers(cluster_id, reserved=True)),
        key=draw(uint8),
        metadata=draw(texts),
        k8s_namespace=draw(texts),
        k8s_pod_name=draw(texts),
        k8s_pod_uid=draw(texts),
        k8s_service_account=draw(texts),
        named_ports=draw(
            optional(tuples(st.builds(records.NamedPort, name=texts, port=uint16, protocol=texts), min_size=1))
        ),
    )


label_keys = st.text(st.characters(codec="utf-8", exclude_characters=";=:"), min_size=1, max_size=10)
label_values = st.text(st.characters(codec="utf-8", exclude_characters=";"), max_size=10)


def check_round_trip(record: Any, decode: Callable[[bytes], Any]) -> None:
    data = codec.encode(record)
    decoded = decode(data)
    assert decoded == record
    assert codec.encode(decoded) == data


def go_reference_dump(value: Any) -> bytes:
    # An independent model of Go's json.Marshal output for an already-ordered tree: Python's json with Go's
    # extra escapes. (Python writes \b, \f as Go ≥1.22 does, and lowercase \u00xx.)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text.encode()


def assert_sorted_maps(value: Any, struct_keys: set[str]) -> None:
    # Every JSON object that is not a struct (its keys are not all member names) has sorted keys.
    if isinstance(value, dict):
        if not set(value) <= struct_keys:
            assert list(value) == sorted(value)
        for child in value.values():
            assert_sorted_maps(child, struct_keys)
    elif isinstance(value, list):
        for child in value:
            assert_sorted_maps(child, struct_keys)


STRUCT_KEYS = {
    field.encode_name
    for record_type in (
        records.Node,
        records.CIDR,
        records.NodeAddress,
        records.ClusterService,
        records.L4Addr,
        records.BackendZone,
        records.ForZone,
        records.ServiceExport,
        records.ServicePort,
        records.SessionAffinityConfig,
        records.ClientIPConfig,
        records.IPIdentityPair,
        records.NamedPort,
        records.ClusterConfig,
        records.Capabilities,
    )
    for field in msgspec.structs.fields(record_type)
}


# ---------------------------------------------------------------------------------------------------------------
# Round trips


@given(nodes)
@SETTINGS
def test_nodes_round_trip(node: records.Node) -> None:
    key = keys.node_key(node.cluster, node.name)
    check_round_trip(node, lambda data: codec.decode_node(key, data, cluster=node.cluster, cluster_id=node.cluster_id))


@given(services)
@SETTINGS
def test_services_round_trip(service: records.ClusterService) -> None:
    key = keys.service_key(service.cluster, service.namespace, service.name)
    check_round_trip(
        service, lambda data: codec.decode_service(key, data, cluster=service.cluster, cluster_id=service.cluster_id)
    )


@given(service_exports)
@SETTINGS
def test_service_exports_round_trip(export: records.ServiceExport) -> None:
    key = keys.cached_service_export_key(export.cluster, export.namespace, export.name)
    check_round_trip(export, lambda data: codec.decode_service_export(key, data, cluster=export.cluster))


@given(st.data(), cluster_ids, segments)
@SETTINGS
def test_ip_identities_round_trip(data: st.DataObject, cluster_id: int, cluster: str) -> None:
    pair = data.draw(ip_identities(cluster_id))
    state_key, cached_key = keys.ip_key(pair.prefix_string), keys.cached_ip_key(cluster, pair.prefix_string)
    check_round_trip(
        pair, lambda value: codec.decode_ip_identity(state_key, value, cluster=None, cluster_id=cluster_id)
    )
    check_round_trip(
        pair, lambda value: codec.decode_ip_identity(cached_key, value, cluster=cluster, cluster_id=cluster_id)
    )


@given(st.data(), cluster_ids)
@SETTINGS
def test_host_identity_is_read_as_remote_node(data: st.DataObject, cluster_id: int) -> None:
    pair = msgspec.structs.replace(data.draw(ip_identities(cluster_id)), id=identity.HOST_IDENTITY)
    key = keys.ip_key(pair.prefix_string)
    decoded = codec.decode_ip_identity(key, codec.encode(pair), cluster=None, cluster_id=cluster_id)
    assert decoded == msgspec.structs.replace(pair, id=identity.REMOTE_NODE_IDENTITY)


@given(st.data(), cluster_ids, cluster_names, st.dictionaries(label_keys, label_values, max_size=5))
@SETTINGS
def test_identities_round_trip(data: st.DataObject, cluster_id: int, cluster: str, labels: dict[str, str]) -> None:
    numeric_id = data.draw(identity_numbers(cluster_id, reserved=False))
    labels[records.POLICY_LABEL_CLUSTER] = cluster
    record = records.Identity.from_labels(numeric_id, labels)
    state_key, cached_key = keys.identity_key(numeric_id), keys.cached_identity_key(cluster, numeric_id)
    check_round_trip(
        record, lambda value: codec.decode_identity(state_key, value, cluster=cluster, cluster_id=cluster_id)
    )
    check_round_trip(
        record, lambda value: codec.decode_identity(cached_key, value, cluster=cluster, cluster_id=cluster_id)
    )


@given(st.data(), modes, st.booleans(), st.booleans(), optional(st.booleans()), segments)
@SETTINGS
def test_cluster_configs_round_trip(
    data: st.DataObject, mode: int, synced: bool, cached: bool, exports: bool | None, cluster: str
) -> None:
    config = records.ClusterConfig(
        id=data.draw(st.integers(1, mode or 255)),
        capabilities=records.Capabilities(
            synced_canaries=synced, cached=cached, max_connected_clusters=mode, service_exports_enabled=exports
        ),
    )
    key = keys.cluster_config_key(cluster)
    check_round_trip(config, lambda value: codec.decode_cluster_config(key, value, cluster=cluster))


@given(timestamps)
@SETTINGS
def test_timestamps_round_trip(moment: datetime.datetime) -> None:
    decoded = codec.decode_timestamp(keys.HEARTBEAT_KEY, codec.encode_timestamp(moment))
    assert decoded == moment and decoded.utcoffset() == moment.utcoffset()


@given(nodes | services | service_exports | st.builds(records.ClusterConfig, id=uint32))
@SETTINGS
def test_encoding_matches_a_model_of_go(record: Any) -> None:
    data = codec.encode(record)
    tree = json.loads(data)
    assert go_reference_dump(tree) == data
    assert tree == json.loads(json.dumps(codec.to_jsonable(record)))
    assert_sorted_maps(tree, STRUCT_KEYS)


# ---------------------------------------------------------------------------------------------------------------
# Fuzzing: only DecodeError escapes

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)


def objects_with_members(record_type: type) -> st.SearchStrategy[dict[str, Any]]:
    # Objects using the record's own member names get past the top-level type check into field decoding.
    names = [field.encode_name for field in msgspec.structs.fields(record_type)]
    return st.fixed_dictionaries({}, optional=dict.fromkeys(names, json_values))


DECODERS: list[tuple[str, type | None, Callable[[str, bytes], object]]] = [
    ("cilium/state/nodes/v1/c/n", records.Node, lambda k, v: codec.decode_node(k, v, cluster="c", cluster_id=1)),
    (
        "cilium/state/services/v1/c/ns/n",
        records.ClusterService,
        lambda k, v: codec.decode_service(k, v, cluster="c", cluster_id=1),
    ),
    (
        "cilium/state/serviceexports/v1/c/ns/n",
        records.ServiceExport,
        lambda k, v: codec.decode_service_export(k, v, cluster="c"),
    ),
    (
        "cilium/state/ip/v1/default/10.0.0.1",
        records.IPIdentityPair,
        lambda k, v: codec.decode_ip_identity(k, v, cluster=None, cluster_id=1),
    ),
    ("cilium/cluster-config/c", records.ClusterConfig, lambda k, v: codec.decode_cluster_config(k, v, cluster="c")),
    ("cilium/state/identities/v1/id/65536", None, lambda k, v: codec.decode_identity(k, v, cluster="c", cluster_id=1)),
    ("cilium/.heartbeat", None, codec.decode_timestamp),
    ("cilium/synced/c/cilium/state/nodes/v1", None, codec.decode_any),
]


def decodes_or_rejects(key: str, decode: Callable[[str, bytes], object], value: bytes) -> None:
    try:
        decode(key, value)
    except DecodeError as exc:
        assert exc.key == key
        assert exc.reason


@given(st.binary(max_size=200))
@SETTINGS
def test_random_bytes_only_raise_decode_error(value: bytes) -> None:
    for key, _, decode in DECODERS:
        decodes_or_rejects(key, decode, value)


@given(json_values)
@SETTINGS
def test_random_json_only_raises_decode_error(value: Any) -> None:
    data = json.dumps(value).encode()
    for key, _, decode in DECODERS:
        decodes_or_rejects(key, decode, data)


@given(st.data(), st.sampled_from([entry for entry in DECODERS if entry[1] is not None]))
@SETTINGS
def test_objects_with_record_members_only_raise_decode_error(
    data: st.DataObject, decoder: tuple[str, type, Callable[[str, bytes], object]]
) -> None:
    key, record_type, decode = decoder
    decodes_or_rejects(key, decode, json.dumps(data.draw(objects_with_members(record_type))).encode())


@given(st.data(), nodes | services | service_exports)
@SETTINGS
def test_one_corrupted_member_only_raises_decode_error(data: st.DataObject, record: Any) -> None:
    tree = json.loads(codec.encode(record))
    tree[data.draw(st.sampled_from(sorted(tree)))] = data.draw(json_values)
    value = json.dumps(tree).encode()
    for key, _, decode in DECODERS[:3]:
        decodes_or_rejects(key, decode, value)
    decodes_or_rejects(key_of(record), codec.decode_any, value)


def key_of(record: records.Node | records.ClusterService | records.ServiceExport) -> str:
    if isinstance(record, records.Node):
        return keys.node_key(record.cluster, record.name)
    if isinstance(record, records.ClusterService):
        return keys.service_key(record.cluster, record.namespace, record.name)
    return keys.service_export_key(record.cluster, record.namespace, record.name)


@given(
    st.text(max_size=40) | st.sampled_from([key for key, _, _ in DECODERS]).map(lambda key: key + "/x"),
    st.binary(max_size=100) | json_values.map(lambda value: json.dumps(value).encode()),
)
@SETTINGS
def test_decode_any_only_raises_decode_error(key: str, value: bytes) -> None:
    decodes_or_rejects(key, codec.decode_any, value)


@given(st.data(), services, cluster_ids)
@SETTINGS
def test_omitempty_members_appear_only_when_set(
    data: st.DataObject, service: records.ClusterService, cluster_id: int
) -> None:
    tree = json.loads(codec.encode(service))
    assert ("hostnames" in tree, "zones" in tree) == (bool(service.hostnames), bool(service.zones))
    pair = data.draw(ip_identities(cluster_id))
    tree = json.loads(codec.encode(pair))
    for member, value in (("Mask", pair.mask), ("K8sPodUID", pair.k8s_pod_uid), ("NamedPorts", pair.named_ports)):
        assert (member in tree) == bool(value)
    assert {"IP", "HostIP", "ID", "Key", "Metadata"} <= set(tree)
